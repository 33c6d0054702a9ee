"""Conversation processing: turning a finished transcript into a structured summary."""
