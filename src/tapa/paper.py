"""The paper's numbers (arXiv 2509.12635), in one place: its tables, its Appendix I bias
statistics and distances, its RoPE base and its pretraining compute. Code that compares with
the paper imports them from here."""

from __future__ import annotations

PAPER_TABLE_2 = {  # pretrain 8K, no fine-tuning; lengths 1K..32K = L0/8 .. 4 L0 (paper's L0 = 8K)
    "rope": [13.08, 12.63, 12.32, 12.21, 5878.17, 16366.63],
    "rope+yarn": [13.09, 12.64, 12.33, 12.22, 5869.35, 16342.28],
    "rope+pi": [13.07, 12.62, 12.30, 12.19, 5872.29, 16350.28],
    "tapa": [13.12, 12.66, 12.34, 12.22, 17.96, 122.71],
}
PAPER_TABLE_1 = {  # fine-tuned at 32K; 1K, 2K, 4K, 8K, 16K, 32K, 48K, 64K
    "rope": [12.97, 12.53, 12.22, 11.97, 11.79, 12.96, 938.23, 2280.16],
    "rope_big_base": [13.00, 12.54, 12.23, 11.98, 11.80, 12.96, 942.94, 2284.72],
    "pi": [12.99, 12.54, 12.23, 11.98, 11.80, 12.97, 939.17, 2282.44],
    "yarn": [13.05, 12.60, 12.29, 12.03, 11.85, 12.16, 322.14, 1962.55],
    "tapa": [13.04, 12.62, 12.30, 12.07, 11.83, 11.74, 11.67, 11.75],
    "tapa_linear": [14.63, 14.15, 13.83, 13.54, 13.29, 13.13, 13.59, 14.82],
}
PAPER_LENGTHS_1 = ["1K", "2K", "4K", "8K", "16K", "32K", "48K", "64K"]
PAPER_LENGTHS_2 = ["1K", "2K", "4K", "8K", "16K", "32K"]

# Appendix I: near-minus-far score differences of the trained models (near distances 0-100,
# far 10000-10100, the paper's pretraining length 8192)
PAPER_STATS = {"rope": {"mean": 4.1, "std": 0.85}, "tapa": {"mean": 0.03, "std": 3.3}}
PAPER_NEAR, PAPER_FAR, PAPER_CONTEXT = 100, 10000, 8192
PAPER_BASE = 5e5  # RoPE base of the paper's RoPE model
# the paper's pretraining: a ~6.5B non-embedding Llama-3-8B-class model on 420B tokens (6 N T FLOPs)
PAPER_COMPUTE = 6 * 6.5e9 * 420e9
