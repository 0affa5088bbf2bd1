"""Verifiable reasoning tasks: synthetic arithmetic (`arith`), GSM8K (`gsm8k`),
final-answer extraction (`answers`) and a restricted expression evaluator (`safe_eval`)."""
