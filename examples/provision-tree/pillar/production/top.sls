base:
  '*':
    - env
    - secrets
