"""The pose-conditioned dance lab: frames of a dancer predicted from the previous frame and the
current pose image (`data`: the lab's on-disk layout; `synth`: embedded synthetic dancer;
`model`: the lab's template modules and the batched training step; `submission`: the lab's
test output file)."""
