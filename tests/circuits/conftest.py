"""The synthetic recall-vs-reasoning setting the dissociation and recall/reasoning tests share: one small
knowledge base, a random 2-layer model over its vocabulary, and its prompt sets."""

import pytest
import torch

from circuits.recall_reasoning.synthetic import KnowledgeBase, SyntheticTraining, build_model, prompt_sets

KB = KnowledgeBase(n_entities=8, n_relations=2, n_values=6, n_fresh=12, seed=3)


@pytest.fixture(scope="module")
def synthetic_model():
    torch.manual_seed(0)
    return build_model(KB, SyntheticTraining(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=1)).eval()


@pytest.fixture(scope="module")
def synthetic_prompts():
    return prompt_sets(KB, 10, seed=5)
