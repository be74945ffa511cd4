"""The ML library the stages share: encoders and their loading, padding-free packing, search (faiss, torch, the
Triton PQ kernel), the training loop and its distribution, the strategy registries (negative samplers, index kinds)
and statistics. Imports only `stages.core`."""
