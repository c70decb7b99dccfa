"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum of a round's updates.

Built so far (issue 20, part 1): threshold sharing of secrets (shamir.py), the fixed-point ring that updates are
summed in (ring.py), the masks that hide each client's vector (masks.py: key agreement, key derivation and the
mask PRG, all from `cryptography`), and one round of the protocol as plain client and server sessions
(protocol.py), dropouts at every stage included. Not built yet: carrying its stages over the fleets (a strategy's
stages in the simulator and over gRPC), `[secagg]` in the config, masked sample counts, distributed DP.
"""
