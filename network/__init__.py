"""Archipelago's peer-to-peer layer: Noise transport, framing, channels, gossip, peers."""
