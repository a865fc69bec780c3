"""Figures: range maps (`rangemap`, the paper's Figure 1) and the examples sheet (`examples`, its
Figure 5)."""
