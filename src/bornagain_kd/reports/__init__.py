"""Results into numbers a reader can trust: metrics (error, NLL, ECE), born-again ensembles, statistics over
seeds, and the BAN and BAM tables and plots."""
