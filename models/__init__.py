"""deeproom.models"""
