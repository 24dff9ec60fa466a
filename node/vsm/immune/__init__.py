"""System 5's immune system: built-in patterns, signed mitigation policies, enforcement."""
