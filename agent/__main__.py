from agent.cli import console_main

console_main()
