"""deeproom.scenes"""
