"""The front: the app's HTTP routes and signalling, stream registry, media-process placement
and supervision, WebSocket and phone routes, the standalone page. Only the front knows HTTP."""
