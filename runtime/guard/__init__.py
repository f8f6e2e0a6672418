"""Input guards and credentials: auth (join tokens, origins), limits, SDP checks, the JSON
gate, TURN credentials. Imports none of the planes."""
