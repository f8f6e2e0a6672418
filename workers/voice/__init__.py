"""Voice handlers and their models: ReplyOnPause, ReplyOnStopWords, Silero VAD, stop-word
spotting, the bundled speech-to-text and text-to-speech models."""
