"""Peer-method options that fit the tests' 32-wide tiny ViT."""

# options that fit a 32-wide tiny ViT (PEFT's defaults are sized for real models: VB-LoRA's 256-long vectors, C3A's
# 256 blocks, ... must divide the layer widths)
TINY = {
    "vera": "vera r=8",
    "pvera": "pvera r=8",
    "fourierft": "fourierft n_frequency=64",
    "vblora": "vblora r=2 num_vectors=16 vector_length=8",
    "loha": "loha r=2 alpha=4",
    "ia3": "ia3",
    "oft": "oft oft_block_size=8",
    "lily": "lily r=4",
    "tinylora": "tinylora r=2 u=4",
    "c3a": "c3a block_size=8",
}


def peer_options(method: str) -> tuple[str, ...]:
    """`kadapt train` flags that size a peer method for the tiny ViT (nothing for the other methods)."""
    if method not in TINY or " " not in TINY[method]:
        return ()
    return ("--peft_options", ",".join(TINY[method].split()[1:]))
