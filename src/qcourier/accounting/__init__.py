"""Budget, the study report (numbers and plots), Prometheus metrics, the study plan and the study page."""
