"""One error type for bad input, worded for a clinician-researcher."""


class InputError(ValueError):
    """Bad input data: says which subject, which file and what is wrong.

    Attributes:
      subject: the subject ID ("" when the problem is cohort-wide).
      path: the offending file or folder ("" when none).
      problem: what is wrong, in words.
    """

    def __init__(self, subject: str, path, problem: str):
        self.subject = str(subject)
        self.path = str(path) if path else ""
        self.problem = problem
        where = [f"subject {self.subject}"] if self.subject else []
        if self.path:
            where.append(f"file {self.path}")
        super().__init__(f"{', '.join(where) or 'cohort'}: {problem}")
