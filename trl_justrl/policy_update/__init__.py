"""The policy update: the JustRL objective as TRL computes it (`loss`), the policy forwards (`forwards`), the
batch on any number of processes (`geometry`), a micro-batch's memory (`activation_memory`) and the padding-free
updates (`trimming`, `packing`, `padding_free`)."""
