"""SVG's Stochastic Moving MNIST: digits bouncing in a 64x64 frame, each bounce a random new
direction, so the future is not determined by the past (`data`: the motion, rendered or real
MNIST digits; `task`: the interface of cvae.tasks, SVG with one channel and no conditions)."""
