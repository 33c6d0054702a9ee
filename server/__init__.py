"""trioscribe server: realtime transcription on Trio structured concurrency."""
