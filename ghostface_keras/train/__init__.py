"""Training: the margin head (`heads`), losses, the composable train step (SAM, partial FC), schedules,
callbacks, the staged `Trainer` and the `recipes` (the `TrainingConfig` behind `ghostface-train`)."""
