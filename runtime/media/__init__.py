"""The media plane: aiortc peer connections, codecs, WebRTC and WebSocket sessions, the media
engine and the media-process actor. Imports the control plane, never the front."""
