"""Offline checks of Archipelago proof files (docs/PROTOCOL.md section 13).

`proofcheck.verify` is one module that imports only the standard library,
pynacl and msgpack, so that an auditor or another chain can copy it alone
and check a proof file against the genesis they trust, without this project.
"""
