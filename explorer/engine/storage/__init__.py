"""How a compressed model is stored: size accounting to the bit, stream coders, the .cexp format.

No imports here: each module is imported by its own path."""
