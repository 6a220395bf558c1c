"""Model families, torch-free: what each can do and how requests select it.

A family is two modules: a descriptor here (tasks, input rules, chat parsing, typed options, the
path of its runtime class) and its torch code under `deployments/`. `families.registry` lists the
families this package ships; a config may add more by import path (`families:` in the app args).
"""
