"""Numerical checks of the paper's theorems (RoPE's distance bias, TAPA's decaying bias and
bounded variance) and the distance-bias measurement of trained models (Appendix I)."""
