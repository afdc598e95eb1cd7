"""What every layer may use: errors, typed parsing, atomic writes, checksums, the folder
contract, torch.distributed, and the allocator tuning. Imports nothing from saekit."""
