"""Decoding helpers: the KV cache used by greedy generation and the proofs that a frozen path's outputs can be reused."""
