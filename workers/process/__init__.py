"""What runs a session inside a worker process: the Ray actor (actor.py), one session
(session.py), the loops that call each kind of handler (drivers.py), what a handler returns on
its way out (output.py, convert.py), and the loader that recovers the app's handler."""
