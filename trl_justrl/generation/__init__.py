"""The generation server, from the trainer's side and the server's: its pre-flight checks and sync watchdog
(`server_checks`), the trainer's client and weight transports (`client`), versioned weight folders
(`weight_folder`) and the vLLM worker extension that loads them (`vllm_extension`).

Only `client` imports TRL; the other modules import nothing of the project, so a vLLM server in an environment of its
own can load the extension.
"""
