"""The training engine shared by every branch, and the parts it is built from.

``recipe`` maps the YAML recipes onto typed dataclasses; ``engine`` runs the optimisation loop through
Accelerate; ``losses`` holds every class and attribute loss (weighted CE, focal, soft-label CE/KL, CCC)
behind one ``MultiTaskLoss``; ``batching`` and ``sampler`` decide which items form each step's batch
(shuffled, or class-balanced against MSP-Podcast's imbalance), sharded across processes and resumable
mid-epoch; ``optim`` and ``checkpoint`` cover optimisers, schedules and safetensors checkpoints.
Modules are imported on use, so importing the package stays cheap.
"""
