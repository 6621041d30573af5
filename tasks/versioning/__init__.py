"""Dataset versions with git and DVC: recording a curated folder (`dvc add`/`commit`, git commit), and reading
the history of versions back (`ganflow datasets`)."""
