"""The ``/v4/listen`` pipeline: codecs, the VAD gate, transcript segments, and the session.

Pure building blocks (no I/O, cheap enough for the per-frame hot path): :mod:`.codecs` turns
client frames into PCM16, :mod:`.vad` decides which audio reaches STT and maps STT times back to
session time, :mod:`.segments` turns final STT results into Omi ``TranscriptSegment`` updates.
The session, its handler and the conversation tracker build on them.
"""
