"""Between nodes: identity, envelope (wire format, signing, replay guard), transport,
discovery, membership and routing. Knows nothing of VSM policy (`node`)."""
