"""Continuous chain of thought on graph reachability (Zhu et al. 2025, arXiv 2505.12514; Coconut, arXiv 2412.06769).

graphs        random DAG problems, distances, reachable sets, split by graph
tokens        the tokenizer and the fixed sequence layout
model         the 2-layer GPT-2-style HookedTransformer; the continuous-thought forward on the KV cache
train         the Coconut curriculum and the discrete-CoT / no-CoT baselines, accuracy
construction  the hand-set weights whose thoughts are normalised reachable sets
probes        grouped inner products and attention, linear read-out of the reachable set
analysis      one model's probe tables; figures: the run's figures
"""
