"""The control plane over Ray: the scheduler (pools, leases, waiting rooms, the session
directory) and the typed values it exchanges. Imports neither the front nor the media plane."""
