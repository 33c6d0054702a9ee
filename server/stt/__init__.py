"""Speech-to-text providers behind one streaming interface (see :mod:`server.stt.base`)."""
