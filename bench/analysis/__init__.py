"""What is computed from records: continual metrics, bootstrap statistics, the learnability gate, the leaderboard and the CI regression check."""
