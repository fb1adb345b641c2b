"""deeproom.net"""
