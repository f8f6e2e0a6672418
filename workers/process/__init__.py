"""What runs a session inside a worker process: the Ray actor, the handler loops, the loader
that recovers the app's handler."""
