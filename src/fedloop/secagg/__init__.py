"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum of a round's updates.

  shamir.py    threshold sharing of the clients' secrets over a prime field
  ring.py      the fixed-point ring Z_{2^bits} that updates are summed in
  masks.py     key agreement, key derivation and the mask PRG (all from `cryptography`)
  protocol.py  one round as plain client and server sessions, dropouts at every stage included
  wire.py      the stages' messages as fixed-size records
  vector.py    what a client's masked vector holds (update, loss, count; distributed DP's noise) and its decoding
  noise.py     the discrete Gaussian sampler of distributed DP
  client.py    a client's answers to the stages, from the session it keeps in memory
  rounds.py    the server's side of a round over any fleet that carries messages
  options.py   the [secagg] section
"""
