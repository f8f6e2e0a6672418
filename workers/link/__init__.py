"""The gateway<->worker contract both sides import, importing neither: the wire formats, the
shared-memory frame channel and its framings, the handshake and the constants they share."""
