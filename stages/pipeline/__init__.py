"""The experiment DAG over the stages (`plan`, which the Snakefile expands), running it without Snakemake
(`run_plan`) and pruning the store (`prune`): the one layer that knows every stage."""
