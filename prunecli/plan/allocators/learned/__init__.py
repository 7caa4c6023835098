"""Learned allocation (DSA): the config and allocator (:mod:`.allocator`), the search on the task loss
(:mod:`.search`) and soft channel masks (:mod:`.masks`); the expected-cost polynomial is
:mod:`prunecli.graph.polynomial`."""

from __future__ import annotations

from prunecli.graph.polynomial import ExpectedCost
from prunecli.plan.allocators.learned.allocator import (
           DEFAULT_SEARCH_EPOCHS,
           Learned,
           learned,
)
from prunecli.plan.allocators.learned.masks import Masks, keep_probabilities
from prunecli.plan.allocators.learned.search import (
           SearchResult,
           budget_shift,
           loss_slopes,
           reduced_gradient,
           search,
)

__all__ = ["DEFAULT_SEARCH_EPOCHS", "ExpectedCost", "Learned", "Masks", "SearchResult", "budget_shift",
           "keep_probabilities", "learned", "loss_slopes", "reduced_gradient", "search"]
