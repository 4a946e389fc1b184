"""Pure evaluation maths: routing metrics, AIQ, bootstrap intervals, reference policies, metric names."""
