from qwendeploy.cli import main

main()
