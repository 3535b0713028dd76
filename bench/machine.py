"""One line describing the machine a benchmark ran on."""
import os, platform

def machine() -> str:
    "CPU model, cores and torch version, e.g. 'AMD EPYC 7B13, 2 cores, torch 2.13.0+cpu'."
    cpu = platform.processor() or platform.machine()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): cpu = line.split(':', 1)[1].strip(); break
    except OSError: pass
    import torch
    gpu = f', {torch.cuda.get_device_name()}' if torch.cuda.is_available() else ''
    return f'{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}'
