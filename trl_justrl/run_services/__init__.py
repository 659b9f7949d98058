"""What keeps a run safe around training: checkpoints that are whole or absent (`checkpoints`), stops and requeues
(`preemption`), what a resume may change (`resume`), the output folder and its one writer (`run_folder`), tokens
kept out of command lines and recipes (`credentials`), and Hub pushes that neither stall nor fail silently
(`hub_push`)."""
