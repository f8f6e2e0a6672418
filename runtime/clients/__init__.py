"""Python clients of an rtcpool app: WebRTC (aiortc) and WebSocket (fastrtc's messages)."""
