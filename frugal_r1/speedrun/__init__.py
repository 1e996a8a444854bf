"""The speedrun: the whole R1 pipeline, random weights to a reasoning model, in 30 CPU minutes."""
