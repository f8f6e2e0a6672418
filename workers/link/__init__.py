"""The gateway<->worker contract both sides import, importing neither: the wire formats, the
shared-memory frame channel and its framings, the handshake and the constants they share.

``wire`` byte layouts and control messages; ``shm`` segments and their slot geometry;
``framing`` the datagram and length-prefixed framings; ``outbox`` ordered, non-blocking
sending; ``channel`` the FrameChannel (slots + doorbell); ``connect`` starting a session;
``constants`` the defaults both sides share."""
